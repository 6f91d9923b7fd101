#!/bin/bash
# A submission script template for SLURM (regula --project P --queue PARTITION --qsubscript
# scripts/queue/slurm.sh COMMAND ...). Regula replaces the XXX...XXX variables (docs/pipeline.md) and
# runs `sbatch` on the result, written to <Type>/jobNNN/run_submit.script. Copy and adapt it to your
# cluster (accounts, modules, memory).
#SBATCH --job-name=XXXnameXXX
#SBATCH --partition=XXXqueueXXX
#SBATCH --ntasks=XXXmpinodesXXX
#SBATCH --cpus-per-task=XXXthreadsXXX
#SBATCH --nodes=XXXnodesXXX
#SBATCH --output=XXXoutfileXXX
#SBATCH --error=XXXerrfileXXX

XXXcommandXXX
