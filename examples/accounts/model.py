"""The account actor: deposits, withdrawals and transfers between accounts.

A transfer withdraws from the source account and, through the transactional outbox, deposits into
the target: the withdrawal and the outgoing message commit together, the deposit is delivered at
least once and applied exactly once (its message id is deduplicated by the target).
"""

from __future__ import annotations

import attrs

import mainspring
from mainspring import ActorContext, CommandRejected, handler


@mainspring.event("example.account.deposited", version=1)
@attrs.frozen
class Deposited:
    amount_cents: int


@mainspring.event("example.account.withdrawn", version=1)
@attrs.frozen
class Withdrawn:
    amount_cents: int


@mainspring.event("example.account.transferred-out", version=1)
@attrs.frozen
class TransferredOut:
    to_account: str
    amount_cents: int


@mainspring.message("example.account.deposit")
@attrs.frozen
class Deposit:
    amount_cents: int


@mainspring.message("example.account.withdraw")
@attrs.frozen
class Withdraw:
    amount_cents: int


@mainspring.message("example.account.transfer")
@attrs.frozen
class Transfer:
    to_account: str
    amount_cents: int


@mainspring.message("example.account.get")
@attrs.frozen
class GetAccount:
    pass


@mainspring.state("example.account.state", version=1)
@attrs.frozen
class AccountState:
    balance_cents: int = 0
    deposits: int = 0
    withdrawals: int = 0


class Account(mainspring.Actor[AccountState]):
    """A bank account whose balance never goes below zero."""

    type_name = "account"
    initial_state = AccountState()
    snapshot_every = 50

    @handler
    def deposit(self, ctx: ActorContext[AccountState], message: Deposit) -> int:
        if message.amount_cents <= 0:
            raise CommandRejected(f"a deposit must be > 0 cents, got {message.amount_cents}")
        ctx.emit(Deposited(message.amount_cents))
        return ctx.state.balance_cents

    @handler
    def withdraw(self, ctx: ActorContext[AccountState], message: Withdraw) -> int:
        self._check_funds(ctx.state, message.amount_cents)
        ctx.emit(Withdrawn(message.amount_cents))
        return ctx.state.balance_cents

    @handler
    def transfer(self, ctx: ActorContext[AccountState], message: Transfer) -> int:
        self._check_funds(ctx.state, message.amount_cents)
        if message.to_account == ctx.actor_id:
            raise CommandRejected("cannot transfer to the same account")
        ctx.emit(TransferredOut(message.to_account, message.amount_cents))
        ctx.tell(Account, message.to_account, Deposit(message.amount_cents))
        return ctx.state.balance_cents

    @handler
    def get(self, ctx: ActorContext[AccountState], message: GetAccount) -> AccountState:
        return ctx.state

    @staticmethod
    def _check_funds(state: AccountState, amount_cents: int) -> None:
        if amount_cents <= 0:
            raise CommandRejected(f"an amount must be > 0 cents, got {amount_cents}")
        if amount_cents > state.balance_cents:
            raise CommandRejected(
                f"insufficient funds: balance {state.balance_cents}, asked {amount_cents}",
                code="insufficient_funds",
            )

    def evolve(self, state: AccountState, event: object) -> AccountState:
        match event:
            case Deposited(amount):
                return attrs.evolve(
                    state, balance_cents=state.balance_cents + amount, deposits=state.deposits + 1
                )
            case Withdrawn(amount) | TransferredOut(_, amount):
                return attrs.evolve(
                    state,
                    balance_cents=state.balance_cents - amount,
                    withdrawals=state.withdrawals + 1,
                )
        raise AssertionError(f"Account cannot apply {event!r}")
