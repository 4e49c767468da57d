"""Reading results back for people: the decision summary, run-to-run diffs, the HTML report, JSON schemas."""
