"""``mobillm bench bandwidth`` as a script: see src/mobillm/bench/bandwidth.py."""

from mobillm.bench.bandwidth import main

if __name__ == "__main__":
    main()
