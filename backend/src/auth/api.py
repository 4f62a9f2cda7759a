from fastapi import APIRouter, Request, status

from src.auth import service
from src.auth.deps import CurrentUser, DbSession, unauthorized
from src.auth.schemas import LoginIn, RegisterIn, TokenOut, UserOut
from src.ratelimit import limit

router = APIRouter(tags=["auth"])


@router.post("/auth/register", status_code=status.HTTP_201_CREATED, response_model=UserOut)
def register(body: RegisterIn, session: DbSession, request: Request) -> object:
    limit(request, "register", account=service.normalize_email(body.email))
    return service.register(session, body.email, body.password, body.name)


@router.post("/auth/login", response_model=TokenOut)
def login(body: LoginIn, session: DbSession, request: Request) -> TokenOut:
    limit(request, "login", account=service.normalize_email(body.email))  # before argon2's ~200 ms
    user = service.authenticate(session, body.email, body.password)
    if user is None:
        raise unauthorized("wrong email or password")
    token, expires_in = service.issue_access_token(user)
    return TokenOut(access_token=token, expires_in=expires_in)


@router.get("/me", response_model=UserOut)
def me(user: CurrentUser) -> object:
    return user
