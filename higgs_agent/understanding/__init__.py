"""Caller understanding: who is speaking and how they sound, per user turn, to steer what the agent says (a
line for the LLM) and how it says it (a Higgs scene). The released Higgs Audio v2 has no audio-understanding
tower, so these signals come from small dedicated models run beside it (`analyzer.TurnAnalyzer`)."""

from higgs_agent.understanding.analyzer import CallerState, TurnAnalysis, TurnAnalyzer
from higgs_agent.understanding.context import (
    STATE_WORDING,
    EmotionReading,
    TurnContext,
    context_line,
    delivery_scene,
)
from higgs_agent.understanding.emotion import (
    BaselineDelta,
    EmotionClassifier,
    EmotionState,
    ModelEmotion,
    Prosody,
    SpeakerBaseline,
    StateRules,
)
from higgs_agent.understanding.prosody import ProsodyFeatures, measure_prosody, speaking_rate
from higgs_agent.understanding.speaker_id import (
    SpeakerEncoder,
    SpeakerMatch,
    SpeakerRegistry,
    load_speaker_encoder,
)

__all__ = [
    "STATE_WORDING", "BaselineDelta", "CallerState", "EmotionClassifier", "EmotionReading", "EmotionState",
    "ModelEmotion", "Prosody", "ProsodyFeatures", "SpeakerBaseline", "SpeakerEncoder", "SpeakerMatch",
    "SpeakerRegistry", "StateRules", "TurnAnalysis", "TurnAnalyzer", "TurnContext", "context_line",
    "delivery_scene", "load_speaker_encoder", "measure_prosody", "speaking_rate",
]
