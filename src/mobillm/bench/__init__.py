"""`mobillm bench`: the paper's measurements (memory, codecs, bandwidth, convergence, profile)."""
