"""``mobillm bench codecs`` as a script: see src/mobillm/bench/codecs.py."""

from mobillm.bench.codecs import main

if __name__ == "__main__":
    main()
