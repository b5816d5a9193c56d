"""One file per adaptation method; each defines METHOD = <bench.harness.method.Method subclass>()."""
