"""Judging: the Judge interface (base), its backends (rubric, claude), the one registry that names them,
Claude's request cache (cache), preference pairs from verdicts (pairs) and from existing datasets
(sources). Import the module you need: a stage depends on exactly the modules it imports."""
