"""Compare two runs: match, unshard, align, measure, judge, report. Also home of the CLI."""
