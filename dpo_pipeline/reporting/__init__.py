"""Reporting: the report's markdown and terminal table (tables), diagnostics (diagnostics) and pictures
(figures). Import the module you need: a stage depends on exactly the modules it imports."""
