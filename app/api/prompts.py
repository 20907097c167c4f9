"""Sentences for a speaker to read aloud when enrolling."""

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import PrincipalDep
from app.api.schemas import PromptList, error_responses, success_response
from app.data.prompts import sample_prompts

router = APIRouter(prefix="/v1", tags=["enrolment"])


@router.get(
    "/prompts",
    response_model=PromptList,
    responses={**success_response(), **error_responses(401, 422)},
)
async def list_prompts(
    _: PrincipalDep,
    n: Annotated[int, Query(ge=1, le=400)] = 60,
    seed: Annotated[int | None, Query(ge=0)] = None,
) -> PromptList:
    return PromptList(data=sample_prompts(n, seed))
