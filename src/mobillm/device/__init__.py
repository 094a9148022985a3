"""The device side: a frozen backbone that only runs forward passes and streams its taps."""
