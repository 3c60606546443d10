"""ctvl's workflows: one module per job a user runs end to end, each the front door of one CLI command.

A workflow is orchestration over the shared layers (``data``, ``models``, ``survival``, ``train``,
``infer``): it reads inputs, calls them in order and writes the outputs with their configs. It holds
no model or survival math of its own, and nothing in the library imports it (only ``ctvl.cli``).

- :mod:`ctvl.workflows.demo`: ``ctvl demo`` / ``make demo``, the CT vision-language survival model
  end to end on the built-in synthetic cohort.
"""
