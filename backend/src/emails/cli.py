"""Inspect and repair the email outbox from backend/: `python -m src.emails.cli
{stats,list,retry,cancel,suppressions,lift,purge}`."""

import argparse
import sys
from typing import TypeVar

from src.db import SessionLocal
from src.emails import suppressions
from src.emails.models import EmailStatus
from src.emails.service import EmailService

_Id = TypeVar("_Id", int, str)  # email ids, or suppressed addresses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.emails.cli", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("stats", help="how many emails are in each status")
    listing = commands.add_parser("list", help="the newest emails, optionally of one status")
    listing.add_argument("--status", choices=[s.value for s in EmailStatus])
    listing.add_argument("--limit", type=int, default=20)
    retry = commands.add_parser(
        "retry", help="send failed (or cancelled, or suppressed) emails again, with fresh attempts"
    )
    target = retry.add_mutually_exclusive_group(required=True)
    target.add_argument("ids", nargs="*", type=int, default=[], help="email ids")
    target.add_argument("--all-failed", action="store_true", help="every failed email")
    cancel = commands.add_parser("cancel", help="stop pending emails from being sent")
    cancel.add_argument("ids", nargs="+", type=int, help="email ids")
    suppressed = commands.add_parser("suppressions", help="the addresses no email goes to, newest first")
    suppressed.add_argument("--limit", type=int, default=50)
    lift = commands.add_parser("lift", help="let email go to suppressed addresses again")
    lift.add_argument("addresses", nargs="+", help="email addresses")
    purge = commands.add_parser("purge", help="delete what retention keeps no longer, as the daily job does")
    purge.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    args = parser.parse_args(argv)
    if getattr(args, "limit", 1) < 1:
        parser.error("--limit must be at least 1")

    if args.command == "purge":
        from src.ops import retention

        counts = retention.expired_counts() if args.dry_run else retention.purge_expired()
        verb = "would delete" if args.dry_run else "deleted"
        print(f"{verb} " + ", ".join(f"{count} {table}" for table, count in counts.items()))
        return 0

    with SessionLocal() as session:
        if args.command == "stats":
            for status, count in EmailService.stats(session).items():
                print(f"{status:<10} {count}")
            return 0
        if args.command == "list":
            status = EmailStatus(args.status) if args.status else None
            emails = EmailService.listing(session, status, args.limit)
            if not emails:
                print("no emails match")
            for e in emails:
                error = f"  [{e.last_error}]" if e.last_error else ""
                tries = f"{e.attempts}/{e.max_attempts}"
                print(f"{e.id:>8}  {e.status.value:<9} {tries}  {e.to_email}  {e.subject}{error}")
            return 0
        if args.command == "retry":
            if not args.all_failed and not args.ids:
                parser.error("name the email ids to retry, or --all-failed")
            wanted = None if args.all_failed else args.ids
            retried = EmailService.retry(session, wanted)
            why_not = "no such email, or not failed, cancelled or suppressed"
            return _report("retried", wanted, retried, why_not)
        if args.command == "cancel":
            cancelled = EmailService.cancel(session, args.ids)
            return _report("cancelled", args.ids, cancelled, "no such email, or not pending")
        if args.command == "suppressions":
            listed = suppressions.listing(session, args.limit)
            if not listed:
                print("no address is suppressed")
            for s in listed:
                since = s.created_at.isoformat(timespec="seconds")
                print(f"{s.email}  {s.reason:<10} since {since}{'  [' + s.detail + ']' if s.detail else ''}")
            return 0
        wanted_addresses = [suppressions.address_key(a) for a in args.addresses]
        lifted = [s.email for s in suppressions.lift(session, addresses=wanted_addresses)]
        return _report("lifted", wanted_addresses, lifted, "not suppressed", "suppression(s)")


def _report(
    verb: str, wanted: list[_Id] | None, changed: list[_Id], why_not: str, noun: str = "email(s)"
) -> int:
    print(f"{verb} {len(changed)} {noun}{': ' + ' '.join(map(str, sorted(changed))) if changed else ''}")
    skipped = sorted(set(wanted or ()) - set(changed))
    if skipped:
        print(f"not {verb} ({why_not}): {' '.join(map(str, skipped))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
