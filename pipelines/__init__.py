"""Ray stages and their entry points: data, train, sweep, generate, evaluate, report, run."""
