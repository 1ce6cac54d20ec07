"""The command line's catalog (bench/catalog.py): what it names and checks, cached under a key of the code, so that
bad input is answered before torch or any world is imported."""

import json
import subprocess
import sys
from pathlib import Path

from bench.catalog import CACHE, Catalog, catalog, code_key

ROOT = Path(__file__).resolve().parents[1]


def test_the_cached_catalog_is_the_registries_own():
    live = Catalog.from_registries()
    assert Catalog.from_json(json.loads(json.dumps(live.to_json()))) == live
    bounds = {o.name: o.bounds for o in live.methods["sas"].options}
    assert str(bounds["clip_range"]) == "> 0" and bounds["grid"] is None  # a field declared without option()
    assert live.methods["flow_grpo"].families == ("flow",) and live.models["sd3"] == "flow"


def test_a_stale_or_unreadable_cache_is_rebuilt_and_a_fresh_one_read(tmp_path):
    cache = tmp_path / "catalog.json"
    built, fresh = catalog(cache)
    assert not fresh and json.loads(cache.read_text())["key"] == code_key()
    assert catalog(cache) == (built, True)
    cache.write_text(json.dumps({"key": "another code's", "catalog": {}}))
    assert catalog(cache) == (built, False)
    cache.write_text("{not json")
    assert catalog(cache) == (built, False) and catalog(cache)[1]


def test_bad_input_is_answered_without_importing_torch():
    """With the cache fresh, `bench run` refuses an unknown suite, method, model or option value in one line and exit
    2 without importing torch, a world or a reward (each of which takes seconds)."""
    catalog(CACHE)  # fresh for this code
    probe = (
        "import sys\n"
        "from bench.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit as exit:\n"
        "    print(exit.code, sorted(m for m in ('torch', 'worlds', 'rewards') if m in sys.modules))\n"
    )
    for argv in (["--suite", "nope"], ["--method", "ddpo@nope"], ["--ddpo.clip_range=-1"], ["--ddpo.clip"]):
        done = subprocess.run(
            [sys.executable, "-c", probe, "run", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert done.stdout.strip() == "2 []", (argv, done.stdout, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and "error:" in done.stderr, done.stderr
