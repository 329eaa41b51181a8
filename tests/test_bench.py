"""The benchmarks run on CI-size hardware and print their contract as the last line."""

import json
import subprocess
import sys

import pytest

CONTRACT = {
    "engine_step_ms", "forward_step_ms", "engine_vs_forward", "ttfa_steps", "ttfa_ms", "greedy_matches_reference",
    "codec_receptive_field_frames", "codec_stream_snr_db", "codec_stream_max_seam_jump", "codec_stream_overhead",
}


def bench_json(*args: str) -> dict:
    """Run `higgs-agent bench ARGS --json`; the JSON on its last stdout line."""
    result = subprocess.run([sys.executable, "-m", "higgs_agent", "bench", *args, "--json"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_bench_engine_prints_its_json_last(tiny_dir):
    figures = bench_json("engine", "--model", str(tiny_dir), "--frames", "30", "--repeats", "1")
    assert CONTRACT <= figures.keys()
    assert figures["greedy_matches_reference"] is True
    assert figures["codec_stream_snr_db"] >= 40
    assert figures["engine_step_ms"] > 0 and figures["forward_step_ms"] > 0
    assert figures["ttfa_steps"] >= 9  # one prefill + 8 rows before the first whole frame


BATCHING_CONTRACT = {"streams", "speedup_8_vs_1", "realtime_streams", "max_join_stall_ms", "batched_matches_alone"}


def test_bench_batching_prints_its_json_last(tiny_dir):
    figures = bench_json("batching", "--model", str(tiny_dir), "--frames", "6", "--threads", "1")
    assert BATCHING_CONTRACT <= figures.keys()
    assert [s["n"] for s in figures["streams"]] == [1, 2, 4, 8, 16]
    for row in figures["streams"]:
        assert {"n", "frames_per_s_total", "step_ms_p50", "step_ms_p95"} <= row.keys()
        assert row["frames_per_s_total"] > 0 and 0 < row["step_ms_p50"] <= row["step_ms_p95"]
    assert figures["batched_matches_alone"] is True
    assert figures["speedup_8_vs_1"] > 0 and figures["max_join_stall_ms"] > 0
    assert isinstance(figures["realtime_streams"], int)
    assert figures["join_max_chunk_tokens"] <= figures["prefill_chunk_tokens"]
    assert "codec_batch_speedup" in figures


def test_bench_agent_measures_turn_latency_over_a_real_socket(tiny_dir):
    figures = bench_json("agent", "--model", str(tiny_dir), "--turns", "1")
    assert figures["turns"] == figures["completed"] == 1
    stages = [figures[f"{s}_ms_p50"] for s in ("transcript", "first_text", "first_audio_frame", "first_audio_sent")]
    assert None not in stages and stages == sorted(stages)
    assert figures["engine_ttfa_ms_p50"] > 0 and figures["speech_vs_engine"] > 0
    assert "weather" in figures["transcript"].lower()


def test_bench_agent_measures_from_the_last_word_how_each_detection_ends_the_turn(tiny_dir):
    figures = bench_json("agent", "--model", str(tiny_dir), "--turns", "1", "--last-word")["from_last_word"]
    assert set(figures) == {"commit_at_last_word", "server_vad", "semantic_vad"}
    assert all(mode["client_first_audio_ms_p50"] is not None for mode in figures.values())
    assert figures["commit_at_last_word"]["end_of_turn_ms_p50"] is None  # the client said so itself
    assert figures["server_vad"]["end_of_turn_ms_p50"] >= 500  # its silence, in audio time
    assert figures["semantic_vad"]["end_of_turn_ms_p50"] < 2500  # the judge called it, not the longest wait


def test_bench_agent_reports_what_the_caller_analysis_adds(tiny_dir):
    figures = bench_json("agent", "--model", str(tiny_dir), "--turns", "1", "--understanding")
    cost = figures["understanding"]
    assert cost["first_audio_sent_ms_p50_with"] > 0 and cost["first_audio_sent_ms_p50_without"] > 0
    assert cost["added_ms"] == round(cost["first_audio_sent_ms_p50_with"] - cost["first_audio_sent_ms_p50_without"], 1)


def test_bench_agent_sessions_ending_turns_together(tiny_dir):
    figures = bench_json("agent", "--model", str(tiny_dir), "--turns", "1", "--sessions", "2")
    for key, sessions in (("n1", 1), ("n2", 2)):
        round_ = figures[key]
        assert round_["sessions"] == round_["completed"] == sessions and len(round_["ttfa_ms"]) == sessions
        assert round_["loop_lag_samples"] > 0 and 0 <= round_["loop_lag_ms_p50"] <= round_["loop_lag_ms_max"]
        assert round_["underruns"] >= 0 and all(seconds > 0 for seconds in round_["reply_audio_s"])
    assert figures["ttfa_increase_ms"] == round(figures["n2"]["ttfa_ms_p50"] - figures["n1"]["ttfa_ms_p50"], 1)


def test_bench_understanding_prints_its_json_last():
    figures = bench_json("understanding", "--turns", "1")
    assert figures["turns"] == 1 and figures["analysis_ms_p50"] > 0


def test_bench_noise_measures_each_noise_with_and_without_suppression():
    figures = bench_json("noise", "--sentences", "1", "--cpu-seconds", "2")
    assert {f"{kind}_{snr}db" for kind in ("white", "babble", "hum") for snr in (0, 5, 10)} < figures.keys()
    for row in (figures[key] for key in figures if key.endswith("db") or key == "clean"):
        assert set(row["missed_turn_ends"]) == {"off", "on"} and set(row["wer"]) == {"original", "suppressed"}
    assert figures["hum_5db"]["missed_turn_ends"] == {"off": 1, "on": 0}  # webrtcvad hears hum as speech
    assert figures["clean"]["missed_turn_ends"] == {"off": 0, "on": 0}
    assert figures["cpu"]["ms_per_audio_s"] > 0 and figures["cpu"]["delay_ms"] > 0


def test_bench_turns_compares_asr_windows_and_judges_pauses():
    figures = bench_json("turns", "--voices", "1", "--language", "fr")
    english = figures["asr"]["en"]
    assert english["fitted"]["wer"] <= english["full"]["wer"] + 0.05  # the fitted window keeps the accuracy
    assert "English-only" in figures["asr"]["fr"]["skipped"]  # tiny.en cannot be measured in French: said so
    end = figures["end_of_turn"]
    assert end["utterances"] == 20 and end["accuracy"]["blend"] >= 0.7
    assert end["speech_end_to_transcript_ms"] == round(end["pause_ms"] + end["verdict_ms"], 1)
    vad = figures["vad"]  # both detectors under each condition, and neither misses a clean sentence
    assert set(vad) == {f"{name}/{condition}" for name in ("webrtcvad", "silero")
                        for condition in ("clean", "noisy_10db", "phone")}
    assert vad["webrtcvad/clean"]["missed"] == vad["silero/clean"]["missed"] == 0


def test_bench_translate_reports_per_phrase_latency(tiny_dir):
    figures = bench_json("translate", "--model", str(tiny_dir), "--phrases", "2", "--max-frames", "60")
    assert figures["phrases"] == figures["translated"] == 2
    assert len(figures["phrase_to_first_audio_ms"]) == 2 and figures["phrase_to_first_audio_ms_p50"] > 0
    assert figures["first_phrase_heard_before_speaker_finished"] is True and figures["engine_ttfa_ms_p50"] > 0
    # one long turn: told whole, one translation after the speaker's last word; clause by clause, its words are
    # handed over as they are agreed on (how many before the end depends on the machine's speed)
    whole, simultaneous = figures["one_long_turn"]["whole_turn"], figures["one_long_turn"]["simultaneous"]
    assert whole["translations"] == 1 and whole["clauses_translated_early"] == 0
    assert whole["first_audio_before_speaker_finished_ms"] < 0 < whole["lag_ms_p50"]
    assert simultaneous["translations"] - simultaneous["clauses_translated_early"] in (0, 1)  # and the rest
    assert 0 < len(simultaneous["lag_ms"]) <= simultaneous["translations"]  # each translation heard is timed


def test_bench_soak_keeps_a_misbehaved_server_up_and_reports_its_memory(tiny_dir):
    # A fixed workload, not a fixed time: on a slow machine 15 s held fewer than the 6 turns a hang-up needs.
    figures = bench_json("soak", "--model", str(tiny_dir), "--sessions", "2", "--turns", "6")
    assert figures["reconnects"] == 2 and figures["client_failures"] == [] and figures["stuck_turns"] == 0
    assert figures["turns_completed"] >= 12  # each session's 6 turns, and the replies to the talked-over ones
    assert figures["sessions_after"] == 0 and figures["busy_slots_after"] == 0, figures["health_after"]
    assert figures["server_errors"] == 0 and figures["server_tracebacks"] == 0 and figures["server_alive_after"]
    assert set(figures["client_errors"]) <= {"invalid_value", "invalid_json", "unknown_event", "invalid_base64"}
    assert sum(figures["client_errors"].values()) >= 2  # every malformed event was answered
    assert figures["rss_mb_start"] > 100 and figures["rss_mb_end"] <= figures["rss_mb_max"]


def test_bench_phone_compares_a_call_with_the_same_turn_over_websocket(tiny_dir):
    figures = bench_json("phone", "--model", str(tiny_dir), "--turns", "1", "--max-frames", "60")
    assert figures["turns"] == 1 and figures["phone_protocol_violations"] == 0
    assert figures["phone_first_frame_ms_p50"] > 0 and figures["websocket_first_audio_ms_p50"] > 0
    assert figures["phone_minus_websocket_ms"] == round(figures["phone_first_frame_ms_p50"]
                                                        - figures["websocket_first_audio_ms_p50"], 1)
    assert "weather" in figures["phone_transcripts"][0].lower()  # the call's audio was heard, through G.711
    # the same turn over all three transports, split from the caller's last word into the same stages
    split = figures["from_last_word"]
    assert set(split) == {"websocket", "webrtc", "phone"} and figures["webrtc_first_audio_ms_p50"] > 0
    for transport, stages in split.items():
        assert stages["end_of_turn_ms_p50"] > 0 and stages["first_audio_sent_ms_p50"] > 0, transport
        assert stages["transport_ms_p50"] == pytest.approx(  # one turn: what is left is the transport's
            stages["heard_ms_p50"] - stages["end_of_turn_ms_p50"] - stages["first_audio_sent_ms_p50"], abs=0.2)
