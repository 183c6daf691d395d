"""Judging: the Judge interface (base), its backends (rubric; reward_model; claude and openai_compat,
built on online with prompts, claude with batches too), the one registry that names them, the request cache
(cache), preference pairs from verdicts (pairs) and from existing datasets (sources). Import the module you
need: a stage depends on exactly the modules it imports."""
