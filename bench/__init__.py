"""The harness: CLI, suites, meter, runner, evaluation, results store and leaderboards."""
