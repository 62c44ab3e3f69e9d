"""The engines behind the suites: ``migration`` (guests under load, waves of moves, proof each
guest survived), ``integrity`` (that proof: the guest's memory through vp-memcheck, its kernel's
log, its service, and the cause of a corruption), ``convergence`` (at what dirty rate a live
migration stops converging, per policy) and ``density`` (the ramp, with ``density_stats``
deciding when it stops). They use only the Platform seam and the instruments; the suites' tests
drive them."""
