"""The embedded broker: kombu's filesystem transport, with messages that appear whole and
bindings kept per broker folder.

kombu's filesystem transport creates a message file in the queue folder and only then writes into
it; a consumer polling the folder can take the file in between and read it empty or half-written
(seen here under load as "Expecting value" JSON errors, and the message lost with it). Here a message
is written under a dot-name the consumers skip, then renamed into place: rename is atomic on one
filesystem, so a consumer sees either nothing or the whole message.

kombu also keeps exchange bindings in one process-wide state and skips writing a binding to the
folder's exchange table when that state has seen it before, even for another broker folder; a second
broker folder in the same process (tests, a capture node re-pointed) then silently receives no
fanout messages. The state is kept per control folder here.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.transport import filesystem, virtual
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

TRANSPORT = "cachetap.tasks.embedded_broker:Transport"


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # The leading dot keeps consumers off it: they only take "<stamp>.<queue>.msg" names.
        partial = os.path.join(self.data_folder_out, f".{name}.part")
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.rename(partial, final)
        except OSError as exc:
            try:
                os.unlink(partial)
            except OSError:
                pass
            raise filesystem.ChannelError(f"Cannot add message {name!r} to {self.data_folder_out}") from exc


class Transport(filesystem.Transport):
    Channel = Channel
    _states: dict[str, virtual.BrokerState] = {}

    def __init__(self, client, **kwargs):
        super().__init__(client, **kwargs)
        folder = os.path.abspath(client.transport_options.get("control_folder", "control"))
        self.state = self._states.setdefault(folder, virtual.BrokerState())
