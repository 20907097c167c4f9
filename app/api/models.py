"""GET /v1/models, OpenAI-compatible."""

from fastapi import APIRouter

from app.api.deps import PrincipalDep, StateDep
from app.api.schemas import ModelCard, ModelList, error_responses, success_response

router = APIRouter(prefix="/v1", tags=["models"])


@router.get(
    "/models",
    response_model=ModelList,
    responses={**success_response(), **error_responses(401)},
)
async def list_models(state: StateDep, _: PrincipalDep) -> ModelList:
    service = state.transcription
    return ModelList(
        data=[
            ModelCard(id=name, created=state.started_at, description=service.model_description)
            for name in service.model_names
        ]
    )
