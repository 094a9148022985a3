"""``mobillm bench samples`` as a script: see src/mobillm/bench/samples.py."""

from mobillm.bench.samples import main

if __name__ == "__main__":
    main()
