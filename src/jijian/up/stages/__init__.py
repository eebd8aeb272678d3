"""The five stages of `jijian up`, in build order."""

from __future__ import annotations

from jijian.up.stage import Stage
from jijian.up.stages.data import DataStage
from jijian.up.stages.export import ExportStage
from jijian.up.stages.kb import KnowledgeBaseStage
from jijian.up.stages.serve import ServeStage
from jijian.up.stages.train import TrainStage

STAGES: dict[str, Stage] = {
    stage.name: stage for stage in (DataStage(), TrainStage(), ExportStage(), KnowledgeBaseStage(), ServeStage())
}

__all__ = ["STAGES"]
