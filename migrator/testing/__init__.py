"""Harnesses for the demo, the tests and the benchmarks (a local registry, moto, Ceph RGW, a fake Omnibus, synthetic
trees). The product never imports them."""
