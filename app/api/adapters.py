"""A user's adapters: list, import, export, delete, activate."""

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile, status

from app.api.deps import PrincipalDep, SessionDep, StateDep
from app.api.schemas import AdapterList, AdapterPublic, error_responses, success_response
from app.services import adapter_transfer, adapters
from app.services.adapter_transfer import AdapterUpload, ExportForm

router = APIRouter(prefix="/v1/users/{user_id}/adapters", tags=["adapters"])


@router.get(
    "",
    response_model=AdapterList,
    responses={**success_response(), **error_responses(401, 404, 422)},
)
async def list_adapters(user_id: str, session: SessionDep, principal: PrincipalDep) -> AdapterList:
    rows = await adapters.list_adapters(session, principal, user_id)
    return AdapterList(data=[AdapterPublic.model_validate(row) for row in rows])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=AdapterPublic,
    responses={**success_response(201), **error_responses(400, 401, 404, 413, 422)},
)
async def import_adapter(
    user_id: str,
    state: StateDep,
    session: SessionDep,
    principal: PrincipalDep,
    file: Annotated[
        UploadFile,
        File(
            description="An adapter file to import: safetensors (`pqm-lora/1` or "
            "`pqm-saml/1` of kind `adapter`), or a zip of PEFT's adapter_config.json and "
            "adapter_model.safetensors (told apart by content)."
        ),
    ],
    activate: Annotated[bool, Form(description="Make it the user's active adapter.")] = True,
) -> AdapterPublic:
    limit = state.settings.max_adapter_bytes
    adapter = await adapter_transfer.import_adapter(
        session,
        state.adapter_store,
        state.engine,
        principal,
        user_id,
        AdapterUpload(data=await file.read(limit + 1), activate=activate),
        limit,
    )
    return AdapterPublic.model_validate(adapter)


@router.get(
    "/{adapter_id}/weights",
    response_class=Response,
    responses={
        **success_response(
            headers={
                "Content-Disposition": {
                    "description": "`attachment` with the file name `{adapter_id}.safetensors` "
                    "(`{adapter_id}.peft.zip` for `format=peft`).",
                    "required": True,
                    "schema": {"type": "string"},
                },
                "ETag": {
                    "description": "The file's sha256, quoted.",
                    "required": True,
                    "schema": {"type": "string"},
                },
            },
            content={"application/octet-stream": {}, "application/zip": {}},
            description="The adapter file: safetensors, metadata in its header "
            "(`application/octet-stream`), or for `format=peft` a zip of PEFT's "
            "adapter_config.json and adapter_model.safetensors (`application/zip`).",
        ),
        **error_responses(400, 401, 404, 422, 500),
    },
)
async def export_adapter(
    user_id: str,
    adapter_id: str,
    state: StateDep,
    session: SessionDep,
    principal: PrincipalDep,
    form: Annotated[
        ExportForm,
        Query(
            alias="format",
            description="`pqm`: the service's own file (`pqm-lora/1` or `pqm-saml/1`, by "
            "the adapter's method). `peft`: PEFT's form, which transformers + peft "
            "(`PeftModel.from_pretrained`) load; LoRA adapters only (400 for SAML).",
        ),
    ] = "pqm",
) -> Response:
    exported = await adapter_transfer.export_adapter(
        session,
        state.adapter_store,
        principal,
        user_id,
        adapter_id,
        form,
        state.engine.info,
    )
    return Response(
        exported.data,
        media_type=exported.media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{exported.filename}"',
            "ETag": f'"{exported.sha256}"',
        },
    )


@router.delete(
    "/{adapter_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**success_response(204), **error_responses(401, 404, 422)},
)
async def delete_adapter(
    user_id: str, adapter_id: str, state: StateDep, session: SessionDep, principal: PrincipalDep
) -> None:
    await adapters.delete_adapter(session, state.adapter_store, principal, user_id, adapter_id)


@router.post(
    "/{adapter_id}/activate",
    response_model=AdapterPublic,
    responses={**success_response(), **error_responses(401, 404, 409, 422)},
)
async def activate_adapter(
    user_id: str, adapter_id: str, state: StateDep, session: SessionDep, principal: PrincipalDep
) -> AdapterPublic:
    adapter = await adapters.activate_adapter(
        session, principal, user_id, adapter_id, state.engine.info.fingerprint
    )
    return AdapterPublic.model_validate(adapter)
