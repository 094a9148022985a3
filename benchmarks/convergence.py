"""``mobillm bench convergence`` as a script: see src/mobillm/bench/convergence.py."""

from mobillm.bench.convergence import main

if __name__ == "__main__":
    main()
