"""One file per adaptation method; each defines METHOD = <bench.method.Method subclass>()."""
