"""Tools around the suite: benchmarks of its machinery, mixed-task serving, the fork-server launcher, restamp."""
