"""Rate limits raised for load: the benchmarks and the suite send thousands of requests from one
address, many as one user, which the production limits (src/ratelimit.py) would rightly refuse.

Environment variables, because they must reach the API processes these start, and be set before
`src.config` is first imported (so this module imports nothing of Herald's).
"""

RATE_LIMIT_SETTINGS = (
    "RATE_LIMIT_LOGIN_PER_IP", "RATE_LIMIT_LOGIN_PER_ACCOUNT",
    "RATE_LIMIT_REGISTER_PER_IP", "RATE_LIMIT_REGISTER_PER_ACCOUNT",
    "RATE_LIMIT_VERIFY_PER_IP", "RATE_LIMIT_VERIFY_PER_ACCOUNT",
    "RATE_LIMIT_RESET_PER_IP", "RATE_LIMIT_RESET_PER_ACCOUNT",
    "RATE_LIMIT_INVITE_PER_IP", "RATE_LIMIT_INVITE_PER_ACCOUNT",
    "RATE_LIMIT_INVITE_REPLY_PER_IP", "RATE_LIMIT_INVITE_REPLY_PER_ACCOUNT",
    "RATE_LIMIT_STATUS_CHANGE_PER_ACCOUNT",
)  # fmt: skip
RAISED = "1000000/minute"


def raised_rate_limits() -> dict[str, str]:
    """Every rate limit at RAISED, as environment variables."""
    return dict.fromkeys(RATE_LIMIT_SETTINGS, RAISED)
