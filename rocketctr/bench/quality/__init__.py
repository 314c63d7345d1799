"""Pieces of `rocketctr bench quality` (rocketctr/bench/quality/quality_bench.py): the variants it trains, the eval-split
scoring of their towers, and the summary (gap, paired differences, gap recovered) it reports."""
