"""Models: the builtin tiny base (tiny), resolving and loading (loading), LoRA (lora), generation
(generation), KL (kl), and trainer settings and callbacks (training). Import the module you need: a stage
depends on exactly the modules it imports."""
