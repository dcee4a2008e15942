//! vCPUs and memory blocks (sysfs hotplug state).

use qga_ops::{MemoryBlockRequest, MemoryBlockResult, VcpuRequest};
use qga_proto::*;

use super::ops_err;
use crate::dispatcher::Context;

pub(super) fn get_vcpus(
    ctx: &mut Context,
    _: GuestGetVcpus,
) -> Result<Vec<GuestLogicalProcessor>, QgaError> {
    let cpus = ctx.ops.hardware.vcpus().map_err(ops_err)?;
    Ok(cpus
        .into_iter()
        .map(|c| GuestLogicalProcessor {
            logical_id: c.logical_id,
            online: c.online,
            can_offline: Some(c.can_offline),
        })
        .collect())
}

pub(super) fn set_vcpus(ctx: &mut Context, c: GuestSetVcpus) -> Result<i64, QgaError> {
    let req: Vec<VcpuRequest> = c
        .vcpus
        .iter()
        .map(|v| VcpuRequest {
            logical_id: v.logical_id,
            online: v.online,
        })
        .collect();
    ctx.ops.hardware.set_vcpus(&req).map_err(ops_err)
}

pub(super) fn get_memory_blocks(
    ctx: &mut Context,
    _: GuestGetMemoryBlocks,
) -> Result<Vec<GuestMemoryBlock>, QgaError> {
    let blocks = ctx.ops.hardware.memory_blocks().map_err(ops_err)?;
    Ok(blocks
        .into_iter()
        .map(|b| GuestMemoryBlock {
            phys_index: b.phys_index,
            online: b.online,
            can_offline: Some(b.can_offline),
        })
        .collect())
}

pub(super) fn set_memory_blocks(
    ctx: &mut Context,
    c: GuestSetMemoryBlocks,
) -> Result<Vec<GuestMemoryBlockResponse>, QgaError> {
    let req: Vec<MemoryBlockRequest> = c
        .mem_blks
        .iter()
        .map(|b| MemoryBlockRequest {
            phys_index: b.phys_index,
            online: b.online,
        })
        .collect();
    let responses = ctx.ops.hardware.set_memory_blocks(&req).map_err(ops_err)?;
    Ok(responses
        .into_iter()
        .map(|r| GuestMemoryBlockResponse {
            phys_index: r.phys_index,
            response: match r.response {
                MemoryBlockResult::Success => GuestMemoryBlockResponseType::Success,
                MemoryBlockResult::NotFound => GuestMemoryBlockResponseType::NotFound,
                MemoryBlockResult::OperationNotSupported => {
                    GuestMemoryBlockResponseType::OperationNotSupported
                }
                MemoryBlockResult::OperationFailed => GuestMemoryBlockResponseType::OperationFailed,
            },
            error_code: r.error_code,
        })
        .collect())
}

pub(super) fn memory_block_info(
    ctx: &mut Context,
    _: GuestGetMemoryBlockInfo,
) -> Result<GuestMemoryBlockInfo, QgaError> {
    let size = ctx.ops.hardware.memory_block_size().map_err(ops_err)?;
    Ok(GuestMemoryBlockInfo { size })
}
