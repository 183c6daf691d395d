"""Evaluation: the metric schema (schema), statistics (stats), and the eval stage's scoring and
aggregation (scoring). Import the module you need: a stage depends on exactly the modules it imports."""
