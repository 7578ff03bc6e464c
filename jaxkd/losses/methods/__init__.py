"""One module per distillation method: its pure loss function(s), its term and its paper's
defaults (the term's field defaults). `jaxkd.losses.registry` lists the terms by name."""
