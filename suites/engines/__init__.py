"""The engines behind the suites: ``migration`` (guests under load, waves of moves, proof each
guest survived) and ``density`` (the ramp, with ``density_stats`` deciding when it stops).
They use only the Platform seam and the instruments; the suites' tests drive them."""
