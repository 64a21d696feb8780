"""A small account actor used by tests across the suite."""

from __future__ import annotations

from datetime import timedelta

import attrs

import mainspring
from mainspring import ActorContext, CommandRejected, Reminder, handler


@mainspring.event("test.account.deposited", version=1)
@attrs.frozen
class Deposited:
    amount_cents: int


@mainspring.event("test.account.withdrawn", version=1)
@attrs.frozen
class Withdrawn:
    amount_cents: int


@mainspring.event("test.account.interest-paid", version=1)
@attrs.frozen
class InterestPaid:
    amount_cents: int


@mainspring.message("test.account.deposit")
@attrs.frozen
class Deposit:
    amount_cents: int


@mainspring.message("test.account.withdraw")
@attrs.frozen
class Withdraw:
    amount_cents: int


@mainspring.message("test.account.get-balance")
@attrs.frozen
class GetBalance:
    pass


@mainspring.message("test.account.transfer")
@attrs.frozen
class Transfer:
    to_account: str
    amount_cents: int


@mainspring.message("test.account.schedule-interest")
@attrs.frozen
class ScheduleInterest:
    after_ms: int
    amount_cents: int


@mainspring.state("test.account.state", version=1)
@attrs.frozen
class AccountState:
    balance_cents: int = 0
    operations: int = 0


class Account(mainspring.Actor[AccountState]):
    type_name = "test-account"
    initial_state = AccountState()
    snapshot_every = 10

    @handler
    def deposit(self, ctx: ActorContext[AccountState], message: Deposit) -> int:
        if message.amount_cents <= 0:
            raise CommandRejected(f"deposit must be > 0 cents, got {message.amount_cents}")
        ctx.emit(Deposited(message.amount_cents))
        return ctx.state.balance_cents

    @handler
    def withdraw(self, ctx: ActorContext[AccountState], message: Withdraw) -> int:
        if message.amount_cents > ctx.state.balance_cents:
            raise CommandRejected("insufficient funds", code="insufficient_funds")
        ctx.emit(Withdrawn(message.amount_cents))
        return ctx.state.balance_cents

    @handler
    def balance(self, ctx: ActorContext[AccountState], message: GetBalance) -> int:
        return ctx.state.balance_cents

    @handler
    def transfer(self, ctx: ActorContext[AccountState], message: Transfer) -> int:
        if message.amount_cents > ctx.state.balance_cents:
            raise CommandRejected("insufficient funds", code="insufficient_funds")
        ctx.emit(Withdrawn(message.amount_cents))
        ctx.tell(Account, message.to_account, Deposit(message.amount_cents))
        return ctx.state.balance_cents

    @handler
    def schedule(self, ctx: ActorContext[AccountState], message: ScheduleInterest) -> None:
        ctx.set_reminder(
            "interest",
            after=timedelta(milliseconds=message.after_ms),
            payload={"amount_cents": message.amount_cents},
        )

    @handler
    def on_reminder(self, ctx: ActorContext[AccountState], reminder: Reminder) -> None:
        ctx.emit(InterestPaid(reminder.payload["amount_cents"]))

    def evolve(self, state: AccountState, event: object) -> AccountState:
        match event:
            case Deposited(amount) | InterestPaid(amount):
                return AccountState(state.balance_cents + amount, state.operations + 1)
            case Withdrawn(amount):
                return AccountState(state.balance_cents - amount, state.operations + 1)
        raise AssertionError(f"unknown event {event!r}")
