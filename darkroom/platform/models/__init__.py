"""What a model is and how it loads: the model spec, names and where they point, loading,
LoRA adapters, runtime options and step caches, builds of tiny:/random: models, and the one
model-fit check of configs."""
