"""Sources on fixtures made here: LibriSpeech layout, manifests, TFDS (error path and adapter),
packed ArrayRecord shards."""

import importlib.util
import json
import types

import numpy as np
import pytest
import soundfile as sf

from stackdistill import data
from stackdistill.data import manifest, pack, sources

# subset -> speaker -> chapter -> utterance lengths in samples
LIBRISPEECH_LAYOUT = {
    "train-clean-100": {19: {198: [8_000, 12_000]}, 26: {495: [9_000]}},
    "dev-clean": {84: {121123: [10_000, 7_000, 11_000]}},
}


def _tone(length, seed):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, length).astype(np.float32)


@pytest.fixture(scope="module")
def librispeech(tmp_path_factory):
    """A LibriSpeech-layout folder: flac files and their transcripts; returns (root, truth)."""
    root = tmp_path_factory.mktemp("LibriSpeech")
    truth = {}
    for subset, speakers in LIBRISPEECH_LAYOUT.items():
        for speaker, chapters in speakers.items():
            for chapter, lengths in chapters.items():
                folder = root / subset / str(speaker) / str(chapter)
                folder.mkdir(parents=True)
                lines = []
                for n, length in enumerate(lengths):
                    name = f"{speaker}-{chapter}-{n:04d}"
                    samples = _tone(length, len(truth))
                    sf.write(folder / f"{name}.flac", samples, 16_000, subtype="PCM_16")
                    lines.append(f"{name} WORD{n} OF SPEAKER {speaker}")
                    truth[name] = (subset, speaker, chapter, lines[-1].split(" ", 1)[1])
                (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return str(root), truth


def test_librispeech_records_follow_the_transcripts(librispeech):
    root, truth = librispeech
    records = manifest.librispeech_records(root, ["train-clean-100", "dev-clean"])
    assert sorted(r["name"] for r in records) == sorted(truth)
    for record in records:
        subset, speaker, chapter, text = truth[record["name"]]
        assert (record["subset"], record["speaker"], record["chapter"], record["text"]) == (
            subset,
            speaker,
            chapter,
            text,
        )
        assert record["path"].endswith(f"{subset}/{speaker}/{chapter}/{record['name']}.flac")
    assert len(manifest.librispeech_records(root, ["dev-clean"])) == 3


def test_missing_librispeech_subset_names_the_path(librispeech):
    root, _ = librispeech
    with pytest.raises(FileNotFoundError, match="train-other-500"):
        manifest.librispeech_records(root, ["train-other-500"])


def test_librispeech_pipeline_delivers_every_utterance_once(librispeech):
    root, truth = librispeech
    cfg = data.default_config()
    cfg.update(source="librispeech", path=root, subsets=("train-clean-100", "dev-clean"))
    cfg.update(batch_size=2, num_epochs=1, drop_remainder=False, max_samples=20_000)
    cfg.label_keys = ("name", "speaker", "text")
    seen = {}
    for batch in data.make_loader(cfg, process_index=0, process_count=1):
        assert batch["audio"].shape[1] == 20_000
        for row, name in enumerate(batch["name"]):
            seen[str(name)] = row
            subset, speaker, chapter, text = truth[str(name)]
            assert batch["speaker"][row] == speaker and batch["text"][row] == text
            path = f"{root}/{subset}/{speaker}/{chapter}/{name}.flac"
            expected, _ = sf.read(path, dtype="float32")
            length = batch["lengths"][row]
            assert length == len(expected)
            np.testing.assert_array_equal(batch["audio"][row, :length], expected)
            assert not batch["audio"][row, length:].any()
    assert sorted(seen) == sorted(truth)


def test_manifest_command_writes_a_fairseq_tsv(tmp_path, capsys):
    for n, length in enumerate([4_000, 6_000, 5_000]):
        (tmp_path / "sub").mkdir(exist_ok=True)
        sf.write(tmp_path / "sub" / f"u{n}.wav", _tone(length, n), 16_000)
    (tmp_path / "broken.wav").write_bytes(b"not audio at all")
    manifest.main([str(tmp_path)])
    out = capsys.readouterr()
    assert "broken.wav" in out.err
    lines = (tmp_path / "manifest.tsv").read_text().splitlines()
    assert lines[0] == str(tmp_path.resolve())
    assert lines[1:] == ["sub/u0.wav\t4000", "sub/u1.wav\t6000", "sub/u2.wav\t5000"]
    records = manifest.read_manifest(str(tmp_path / "manifest.tsv"))
    assert [r["num_samples"] for r in records] == [4_000, 6_000, 5_000]
    assert all(sf.info(r["path"]).frames == r["num_samples"] for r in records)


def test_jsonl_manifest_keeps_labels_and_resolves_relative_paths(tmp_path):
    sf.write(tmp_path / "a.wav", _tone(3_000, 0), 16_000)
    lines = [
        {"path": "a.wav", "keyword": 3, "text": "up"},
        {"path": str(tmp_path / "a.wav"), "keyword": -1},
    ]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    records = manifest.read_manifest(str(tmp_path / "m.jsonl"))
    assert [r["path"] for r in records] == [str(tmp_path / "a.wav")] * 2
    assert records[0]["keyword"] == 3 and records[0]["text"] == "up"
    assert records[0]["name"] == "a.wav"


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is not None, reason="TensorFlow is installed"
)
def test_tfds_without_tensorflow_names_the_extra_and_the_prepare_command(tmp_path):
    cfg = data.default_config()
    cfg.update(source="tfds", tfds_name="librispeech", split="dev_clean", path=str(tmp_path))
    with pytest.raises(ImportError) as error:
        data.make_loader(cfg, process_index=0, process_count=1)
    assert "stackdistill[tfds]" in str(error.value)
    assert f"tfds build librispeech --file_format=array_record --data_dir={tmp_path}" in str(
        error.value
    )


def test_tfds_examples_become_records(monkeypatch):
    import tensorflow_datasets as tfds

    class FakeSplit:
        dataset_info = types.SimpleNamespace(
            features={"speech": types.SimpleNamespace(sample_rate=16_000), "id": None}
        )

        def __init__(self, split):
            self.examples = [
                {"speech": np.arange(n, dtype=np.int64) - 500, "id": f"{split}-{n}".encode()}
                for n in (1_000, 2_000)
            ]

        def __len__(self):
            return len(self.examples)

        def __getitem__(self, index):
            return self.examples[index]

    monkeypatch.setattr(tfds, "data_source", lambda name, split, **kw: FakeSplit(split))
    source = sources.TfdsSource("librispeech", "dev_clean+test_clean", None)
    assert len(source) == 4
    record = source[3]
    assert record["name"] == "test_clean-2000" and record["sample_rate"] == 16_000
    assert record["audio"].dtype == np.int16
    np.testing.assert_array_equal(record["audio"], np.arange(2_000) - 500)


def test_pack_round_trips_audio_and_labels_and_skips_broken_files(synthetic_corpus, tmp_path):
    records = manifest.read_manifest(synthetic_corpus)[:10]
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....WAVE")
    records.append({"path": str(broken), "name": "broken"})
    shards, written, skipped = pack.pack(records, str(tmp_path / "packed"), 3, workers=1)
    assert len(shards) == 3 and written == 10
    assert len(skipped) == 1 and skipped[0].startswith("broken: unreadable")
    packed = pack.PackedSource(str(tmp_path / "packed"))
    assert len(packed) == 10
    for record, original in zip([packed[i] for i in range(10)], records, strict=False):
        expected, _ = sf.read(original["path"], dtype="int16")
        np.testing.assert_array_equal(record["audio"], expected)
        for key in ("name", "text", "keyword", "speaker", "voice", "phonemes"):
            assert record[key] == original[key]
        assert record["sample_rate"] == 16_000 and record["num_samples"] == len(expected)

    cfg = data.default_config()
    cfg.update(source="arrayrecord", path=str(tmp_path / "packed"), shuffle=False, num_epochs=1)
    cfg.update(batch_size=5, max_samples=100_000, label_keys=("keyword",))
    batches = list(data.make_loader(cfg, process_index=0, process_count=1))
    assert len(batches) == 2
    for row in range(10):
        batch = batches[row // 5]
        expected, _ = sf.read(records[row]["path"], dtype="float32")
        length = batch["lengths"][row % 5]
        np.testing.assert_array_equal(batch["audio"][row % 5, :length], expected)
        assert batch["keyword"][row % 5] == records[row]["keyword"]


def test_pack_command_reads_a_librispeech_folder(librispeech, tmp_path, capsys):
    root, truth = librispeech
    pack.main([root, str(tmp_path / "out"), "--shards", "2", "--subsets", "dev-clean"])
    assert "3 records in 2 shards" in capsys.readouterr().out
    packed = pack.PackedSource(str(tmp_path / "out"))
    assert sorted(packed[i]["name"] for i in range(3)) == sorted(
        name for name, t in truth.items() if t[0] == "dev-clean"
    )
