"""Console vs log file: harmless third-party noise stays off the console and goes to the file; a log file in a
folder that is not (yet) voicetune's is written only once the folder is ready."""

from __future__ import annotations

import logging
import warnings

import pytest

from voicetune.utils.log import close_log_files, route_library_logging, setup_logging


@pytest.fixture
def logs(tmp_path, capsys):
    log = tmp_path / "all.log"
    logging.captureWarnings(False)  # pytest restores warnings.showwarning after each test: install it afresh
    setup_logging(verbose=False, log_file=log)
    yield log
    close_log_files()
    logging.captureWarnings(False)


def test_harmless_third_party_messages_reach_the_file_not_the_console(logs, capsys):
    route_library_logging()
    from transformers.utils import logging as hf_logging

    hf_logging.get_logger("transformers.configuration_utils").warning(
        "Model config: bos_token_id must be `None` or an integer within the vocabulary (between 0 and 255), "
        "got 50256. This may result in unexpected behavior.")
    hf_logging.get_logger("transformers.generation").warning("something transformers really wants said")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("this API is going away", FutureWarning, stacklevel=1)
    logging.getLogger("voicetune.training.loop").debug("step 2/6 loss 1.0")
    logging.getLogger("voicetune.training.loop").info("step 10/60 loss 0.5")
    close_log_files()
    err = capsys.readouterr().err
    assert "bos_token_id" not in err and "going away" not in err and "step 2/6" not in err
    assert "something transformers really wants said" in err and "step 10/60 loss 0.5" in err
    text = logs.read_text()
    for line in ("bos_token_id must be", "something transformers really wants said",
                 "FutureWarning: this API", "DEBUG   voicetune.training.loop: step 2/6", "step 10/60"):
        assert line in text


def test_a_log_file_waits_until_its_folder_is_ready_and_is_dropped_if_it_never_is(tmp_path):
    from voicetune.utils.log import add_log_file

    run = tmp_path / "run"
    add_log_file(run / "train.log", ready=(run / "config.yaml").is_file)
    logging.getLogger("voicetune.test").warning("before the run folder is ours")
    run.mkdir()
    logging.getLogger("voicetune.test").warning("still not ours")
    assert not (run / "train.log").exists()  # a folder that exists is not necessarily voicetune's
    (run / "config.yaml").write_text("{}\n")
    logging.getLogger("voicetune.test").warning("now it is")
    close_log_files()
    text = (run / "train.log").read_text()
    assert text.index("before the run folder") < text.index("still not ours") < text.index("now it is")

    other = tmp_path / "never"
    add_log_file(other / "x.log")
    logging.getLogger("voicetune.test").warning("nowhere to go")
    close_log_files()
    assert not other.exists()
