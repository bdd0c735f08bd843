"""Per-benchmark DataModules and datasets; every one yields `samr1.SegSample`."""

from samr1.datamodules.base import (
    BadSampleLog,
    ReadFailure,
    SampleBatch,
    SampleError,
    SegDataModule,
    collate_samples,
)
from samr1.datamodules.image_query import ImageQueryDataModule
from samr1.datamodules.jsonl import JsonlSegDataModule, JsonlSegDataset
from samr1.datamodules.reasonseg import ReasonSegDataModule, ReasonSegDataset
from samr1.datamodules.refcoco import RefCOCODataModule, RefCOCODataset
from samr1.datamodules.socioseg import SocioSegDataModule, SocioSegDataset
from samr1.datamodules.synthetic import SyntheticShapesDataModule, SyntheticShapesDataset

__all__ = [
    "BadSampleLog",
    "ImageQueryDataModule",
    "JsonlSegDataModule",
    "JsonlSegDataset",
    "ReadFailure",
    "ReasonSegDataModule",
    "ReasonSegDataset",
    "RefCOCODataModule",
    "RefCOCODataset",
    "SampleBatch",
    "SampleError",
    "SegDataModule",
    "SocioSegDataModule",
    "SocioSegDataset",
    "SyntheticShapesDataModule",
    "SyntheticShapesDataset",
    "collate_samples",
]
