"""Benchmark sections; each module has SECTION and run(ctx) -> list[Row]."""
