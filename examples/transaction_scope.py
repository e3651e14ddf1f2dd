"""Transaction scope: a unit of work that every function in the call finds on its own.

The classic tutorial keeps "the current transaction" in a threading.local,
so that code deep in a call can join the transaction without it being
passed down; then it is up to you to clear it, to nest it, and to run the
follow-up work (send the e-mail only once the order is saved; undo a
reservation when it fails). A TransactionManager does that without any
database: tm.transaction() opens a scope for a with block or a function,
tm.current finds it from anywhere inside (and is None everywhere else,
other threads included), on_commit hooks run in order once the outermost
scope succeeds, on_rollback hooks run newest first when a scope fails, a
nested scope that fails rolls back alone, and durable=True refuses to run
inside another scope.

Run: python examples/transaction_scope.py
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from contextual.db import TransactionError, TransactionManager

if TYPE_CHECKING:
    from contextual.db import Transaction

tm = TransactionManager()


class OutOfStockError(Exception):
    """An item can't be reserved."""


class CardDeclinedError(Exception):
    """The payment failed: the whole order must be undone."""


def reserve(item: str, stock: dict[str, int]) -> None:
    """Reserve ``item``, deep inside the order: it finds the transaction itself."""
    txn = tm.current
    if txn is None:
        msg = "reserve() must run inside a transaction"
        raise RuntimeError(msg)
    if stock.get(item, 0) == 0:
        raise OutOfStockError(item)
    stock[item] -= 1
    print(f"  reserve {item} (depth {txn.depth})")

    def release() -> None:
        stock[item] += 1
        print(f"  on_rollback: release {item}")

    txn.on_rollback(release)
    txn.on_commit(lambda: print(f"  on_commit: ship {item}"))


@tm.transaction()
def place_order(items: list[str], stock: dict[str, int], *, card_ok: bool = True) -> None:
    """Reserve every item, then charge the card; each call is a transaction of its own."""
    for item in items:
        reserve(item, stock)
    if not card_ok:
        raise CardDeclinedError
    tm.on_commit(lambda: print("  on_commit: e-mail the receipt"))


def seen_from_another_thread() -> Transaction | None:
    """Return what tm.current is in a new thread, started now."""
    seen: list[Transaction | None] = []
    thread = threading.Thread(target=lambda: seen.append(tm.current))
    thread.start()
    thread.join()
    return seen[0]


def main() -> None:
    """Commit an order, roll one back, nest a scope, and try to nest a durable one."""
    stock = {"book": 3, "lamp": 2, "gift wrap": 0}
    print(f"outside any scope: tm.current={tm.current}")

    print("1. an order that commits: the hooks run in the order they were added")
    place_order(["book", "lamp"], stock)
    print(f"  stock: {stock}")

    print("2. an order whose card is declined: rollback hooks run newest first")
    try:
        place_order(["book", "lamp"], stock, card_ok=False)
    except CardDeclinedError:
        print("  the card was declined; nothing ships")
    print(f"  stock: {stock}")

    print("3. a nested scope fails and rolls back alone; the order still commits")
    with tm.transaction() as order:
        reserve("book", stock)
        try:
            with tm.transaction():  # nested: it joins the order, or fails alone
                reserve("lamp", stock)
                reserve("gift wrap", stock)
        except OutOfStockError as error:
            print(f"  out of stock: {error}; the order goes on without the lamp and its wrap")
        print(f"  current is the order again: {tm.current is order}")
        print(f"  another thread sees tm.current={seen_from_another_thread()}")
    print(f"  {order!r}; stock: {stock}")

    print("4. a durable scope refuses to run inside another one")
    with tm.transaction():
        try:
            with tm.transaction(durable=True):
                print("  not reached")
        except TransactionError as error:
            print(f"  TransactionError: {error}")
    print(f"outside any scope: tm.current={tm.current}")


if __name__ == "__main__":
    main()
