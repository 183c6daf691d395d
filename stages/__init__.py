"""The DVC stages, one recipe each: `python -m stages.<name>` (see dvc.yaml). Their parts live in the
dpo_pipeline package; nothing else belongs here."""
