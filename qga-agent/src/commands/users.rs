//! Passwords and ssh keys: guest-set-user-password and
//! guest-ssh-get/add/remove-authorized-keys. The password is decoded here (bad
//! base64 gets qemu-ga's text) and handed to the ops as bytes; it is never logged.

use qga_proto::*;

use super::ops_err;
use crate::dispatcher::Context;

pub(super) fn set_user_password(
    ctx: &mut Context,
    c: GuestSetUserPassword,
) -> Result<Empty, QgaError> {
    let password = Base64::decode(&c.password).map_err(QgaError::from)?;
    ctx.ops
        .users
        .set_password(&c.username, &password, c.crypted)
        .map_err(ops_err)?;
    Ok(Empty {})
}

pub(super) fn get_authorized_keys(
    ctx: &mut Context,
    c: GuestSshGetAuthorizedKeys,
) -> Result<GuestAuthorizedKeys, QgaError> {
    let keys = ctx
        .ops
        .users
        .authorized_keys(&c.username)
        .map_err(ops_err)?;
    Ok(GuestAuthorizedKeys { keys })
}

pub(super) fn add_authorized_keys(
    ctx: &mut Context,
    c: GuestSshAddAuthorizedKeys,
) -> Result<Empty, QgaError> {
    ctx.ops
        .users
        .add_authorized_keys(&c.username, &c.keys, c.reset.unwrap_or(false))
        .map_err(ops_err)?;
    Ok(Empty {})
}

pub(super) fn remove_authorized_keys(
    ctx: &mut Context,
    c: GuestSshRemoveAuthorizedKeys,
) -> Result<Empty, QgaError> {
    ctx.ops
        .users
        .remove_authorized_keys(&c.username, &c.keys)
        .map_err(ops_err)?;
    Ok(Empty {})
}
