"""The tar-shard format: records round-trip, a shard cut short by a crash loses only the unfinished record."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest

from kame.data.dataset import DatasetError, ShardWriter, read_records, shards


def _write(writer: ShardWriter, index: int, length: int = 4800) -> None:
    rng = np.random.default_rng(index)
    meta = {"id": f"r{index}", "sample_rate": 24000, "duration": length / 24000}
    writer.write(index, meta, rng.uniform(-0.5, 0.5, length).astype(np.float32), np.zeros(length, np.float32))


def test_round_trip_and_sharding(tmp_path):
    writer = ShardWriter(tmp_path, part=1, parts=2, per_shard=2)
    for index in range(5):
        _write(writer, index)
    assert [p.name for p in shards(tmp_path)] == [
        "part1of2-00000.tar",
        "part1of2-00001.tar",
        "part1of2-00002.tar",
    ]
    records = list(read_records(tmp_path))
    assert [r.id for r in records] == [f"r{i}" for i in range(5)]
    original = np.random.default_rng(3).uniform(-0.5, 0.5, 4800).astype(np.float32)
    assert np.abs(records[3].user - original).max() < 1e-4  # 16-bit FLAC
    assert records[3].assistant.shape == (4800,) and not records[3].assistant.any()


@pytest.mark.parametrize("cut", ["inside_json", "inside_audio", "after_header"])
def test_crash_mid_record_is_repaired_on_resume(tmp_path, cut):
    writer = ShardWriter(tmp_path, per_shard=10)
    for index in range(3):
        _write(writer, index)
    path = shards(tmp_path)[0]
    with tarfile.open(path) as tar:
        json_member = tar.getmember("r2.json")
        audio_member = tar.getmember("r2.assistant.flac")
    offset = {
        "inside_json": json_member.offset_data + 3,
        "inside_audio": audio_member.offset_data + 100,
        "after_header": json_member.offset_data,
    }[cut]
    with path.open("r+b") as handle:
        handle.truncate(offset)
    assert [r.id for r in read_records(tmp_path)] == ["r0", "r1"]
    resumed = ShardWriter(tmp_path, per_shard=10)
    assert resumed.done == {"r0", "r1"}
    _write(resumed, 2)
    _write(resumed, 3)
    assert [r.id for r in read_records(tmp_path)] == ["r0", "r1", "r2", "r3"]
    assert ShardWriter(tmp_path, per_shard=10).done == {"r0", "r1", "r2", "r3"}


def test_missing_folder_is_clear(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset folder"):
        list(read_records(tmp_path / "nope"))
