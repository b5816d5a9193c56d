"""Records -> summary, statistics, tables, claim verdicts, plots; reads records and the plan, never trains."""
