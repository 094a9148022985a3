"""``mobillm bench memory`` as a script: see src/mobillm/bench/memory.py."""

from mobillm.bench.memory import main

if __name__ == "__main__":
    main()
