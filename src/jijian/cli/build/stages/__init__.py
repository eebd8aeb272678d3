"""The five stages of `jijian up`, in build order."""

from __future__ import annotations

from jijian.cli.build.stages.data import DataStage
from jijian.cli.build.stages.export import ExportStage
from jijian.cli.build.stages.kb import KnowledgeBaseStage
from jijian.cli.build.stages.serve import ServeStage
from jijian.cli.build.stages.train import TrainStage

STAGES = {stage.name: stage for stage in (DataStage(), TrainStage(), ExportStage(), KnowledgeBaseStage(), ServeStage())}

__all__ = ["STAGES"]
