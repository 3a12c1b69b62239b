"""`generate`: synthetic session files in every import format, for demos, tests and load.

Sessions are produced and written one at a time, so a file of any size costs
the memory of one session. The same seed gives the same file byte for byte;
`data/sessions.json` and `data/sessions.csv` are this command's output.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TextIO

import click

from contract.importwriter import WRITER_FORMATS, utc_text, write_sessions

FLAVOURS = ("plain", "sample")

FIRST_NAMES = (
    "João",
    "José",
    "Antônio",
    "Francisco",
    "Carlos",
    "Paulo",
    "Pedro",
    "Lucas",
    "Luiz",
    "Marcos",
    "Luís",
    "Gabriel",
    "Rafael",
    "Daniel",
    "Marcelo",
    "Bruno",
    "Eduardo",
    "Felipe",
    "Raimundo",
    "Rodrigo",
    "Matheus",
    "André",
    "Fábio",
    "Sérgio",
    "Vinícius",
    "Caio",
    "Thiago",
    "Otávio",
    "Júlio",
    "Márcio",
    "Cauã",
    "Heitor",
    "Benício",
    "Davi",
    "Théo",
    "Arthur",
    "Maria",
    "Ana",
    "Francisca",
    "Antônia",
    "Adriana",
    "Juliana",
    "Márcia",
    "Fernanda",
    "Patrícia",
    "Aline",
    "Sandra",
    "Camila",
    "Amanda",
    "Bruna",
    "Jéssica",
    "Letícia",
    "Júlia",
    "Luciana",
    "Vanessa",
    "Mariana",
    "Gabriela",
    "Larissa",
    "Beatriz",
    "Lívia",
    "Cecília",
    "Helena",
    "Alícia",
    "Valentina",
    "Luíza",
    "Sônia",
    "Inês",
    "Lúcia",
    "Débora",
    "Flávia",
    "Tânia",
    "Vitória",
    "Clarice",
    "Iara",
    "Raíssa",
    "Yasmin",
)
SURNAMES = (
    "Silva",
    "Santos",
    "Oliveira",
    "Souza",
    "Rodrigues",
    "Ferreira",
    "Alves",
    "Pereira",
    "Lima",
    "Gomes",
    "Ribeiro",
    "Carvalho",
    "Almeida",
    "Lopes",
    "Soares",
    "Fernandes",
    "Vieira",
    "Barbosa",
    "Rocha",
    "Dias",
    "Nascimento",
    "Andrade",
    "Moreira",
    "Nunes",
    "Marques",
    "Machado",
    "Mendes",
    "Freitas",
    "Cardoso",
    "Ramos",
    "Gonçalves",
    "Santana",
    "Teixeira",
    "Araújo",
    "Conceição",
    "Brandão",
    "Magalhães",
    "Falcão",
    "Simões",
    "Guimarães",
    "Assunção",
    "Peçanha",
    "Sá",
    "Leão",
    "Aragão",
    "Gusmão",
    "Romão",
    "Antunes",
    "Patrício",
    "Galvão",
    "Bragança",
    "Damásio",
)
FOREIGN_NAMES = (
    "Benjamin Lynch",
    "Sophie Müller",
    "Hiroshi Tanaka",
    "Chloé Dubois",
    "Liam O'Connor",
    "Zoë Ashford",
    "Ørjan Nilsen",
    "François Lefèvre",
    "Siobhán Kelly",
    "Mateo Hernández",
)
# The sample starts with names that the search examples and tests look for.
SAMPLE_NAMES = (
    "João Silva",
    "Ana Luíza Conceição",
    "Mariana Gonçalves",
    "Benjamin Lynch",
    "José Antônio Araújo",
)
MESSAGES = (
    "Olá, tudo bem?",
    "Olá, meu nome é {first} e tenho uma dúvida sobre a cobrança.",
    "Bom dia! Gostaria de saber o status do meu pedido.",
    "Boa tarde, meu pagamento não foi confirmado.",
    "Vocês entregam em São Paulo?",
    "Qual o prazo de entrega para Fortaleza?",
    "Recebi o produto com defeito, como faço a troca?",
    "Preciso da segunda via do boleto.",
    "O código de rastreio não está funcionando.",
    "Posso pagar com Pix?",
    "Quero cancelar minha assinatura.",
    "A fatura veio com um valor diferente do combinado; podem verificar?",
    "Meu cartão foi recusado, o que aconteceu?",
    "Vocês têm atendimento aos sábados?",
    "Não consigo acessar minha conta, esqueci a senha.",
    "Gostaria de falar com um atendente, por favor.",
    "Já faz uma semana e o pedido não chegou.",
    "Tem desconto para pagamento à vista?",
    "Boa noite! Ainda estão atendendo?",
    "Ok, aguardo o retorno.",
    "Perfeito, muito obrigada!",
    "Pode me enviar a nota fiscal por e-mail?",
    "Meu endereço mudou, como atualizo o cadastro?",
    "O aplicativo está travando na tela de pagamento.",
    "Vocês aceitam devolução depois de 30 dias?",
    "Comprei dois itens, mas só chegou um.",
    "Consigo retirar o pedido na loja física?",
    "Sim, pode ser amanhã à tarde.",
    "Não recebi o e-mail de confirmação.",
    'Vocês ainda têm o modelo "Turbo 3000" em estoque?',
    "Bom dia!\nPreciso de ajuda com a entrega.\nO número do pedido é {order}.",
    "Oi! 😊 Queria tirar uma dúvida rápida.",
    "Qual o valor do frete para Belo Horizonte?",
    "A promoção ainda está válida?",
    "Estou aguardando o reembolso há 10 dias.",
    "Valeu, até mais!",
)
# Brazilian area codes; a contact identifier is a mobile number: area code, 9, eight digits.
AREA_CODES = (11, 21, 27, 31, 41, 47, 48, 51, 61, 62, 71, 81, 84, 85, 91, 92)
MAX_SESSIONS = len(AREA_CODES) * 10**8
_FIRST_DATE = datetime(2021, 1, 1, tzinfo=UTC)
_DATE_SPAN_SECONDS = 4 * 365 * 24 * 3600
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_BRASILIA = timezone(timedelta(hours=-3))
_DATE_STYLES = ("z", "offset", "naive", "date-string", "date-millis", "date-number-long")


def generate_sessions(
    count: int, *, messages_per_session: int = 3, seed: int = 42, flavour: str = "plain"
) -> Iterator[dict[str, Any]]:
    """`count` sessions shaped as in a JSON session file, produced one at a time.

    "plain" gives canonical values and exactly `messages_per_session` messages;
    "sample" gives the variants real files hold (ObjectIds as {"$oid"}, contact
    identifiers as strings, platform types in any case, every date form, missing
    message ids) and as many messages on average, a few sessions none. Contact
    identifiers are unique within a file.
    """
    if not 0 <= count <= MAX_SESSIONS:
        raise ValueError(f"count must be between 0 and {MAX_SESSIONS}")
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; expected one of {', '.join(FLAVOURS)}")
    rng = random.Random(seed)
    contacts = _ContactNumbers(rng)
    for index in range(count):
        yield _session(rng, index, contacts.number(index), messages_per_session, flavour)


@click.command("generate")
@click.option(
    "--sessions",
    "count",
    type=click.IntRange(0, MAX_SESSIONS),
    default=1000,
    show_default=True,
    help="How many sessions to write.",
)
@click.option(
    "--format",
    "file_format",
    type=click.Choice(WRITER_FORMATS),
    default="json",
    show_default=True,
    help="json: an array; ndjson: one session per line; csv: one session per row with the "
    "messages as JSON text; csv-messages: one message per row.",
)
@click.option(
    "--messages-per-session",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Messages in each session (the mean, for the sample flavour).",
)
@click.option("--seed", type=int, default=42, show_default=True, help="The same seed writes the same file.")
@click.option(
    "--flavour",
    type=click.Choice(FLAVOURS),
    default="plain",
    show_default=True,
    help="plain: canonical values; sample: the value variants real files hold.",
)
@click.option(
    "--output",
    type=click.File("w", encoding="utf-8"),
    default="-",
    show_default=True,
    help="File to write, or - for standard output.",
)
def generate(count: int, file_format: str, messages_per_session: int, seed: int, flavour: str, output: TextIO) -> None:
    """Write a file of synthetic sessions in one of the import formats."""
    sessions = generate_sessions(count, messages_per_session=messages_per_session, seed=seed, flavour=flavour)
    written = write_sessions(sessions, output, file_format)
    if output.name != "<stdout>":
        click.echo(f"wrote {written} sessions to {output.name}", err=True)


class _ContactNumbers:
    """Unique mobile numbers without remembering the ones handed out.

    An affine map modulo the size of the number space, with a factor coprime
    to it (the space is 16 area codes times 10**8, so any factor ending in 1, 3,
    7 or 9), is a bijection: distinct indexes give distinct numbers that still
    look random.
    """

    def __init__(self, rng: random.Random) -> None:
        self._factor = 10 * rng.randrange(MAX_SESSIONS // 10) + rng.choice((1, 3, 7, 9))
        self._shift = rng.randrange(MAX_SESSIONS)

    def number(self, index: int) -> int:
        position = (self._factor * index + self._shift) % MAX_SESSIONS
        subscriber, area_code = divmod(position, len(AREA_CODES))
        return int(f"{AREA_CODES[area_code]}9{subscriber:08d}")


def _session(rng: random.Random, index: int, contact: int, messages_per_session: int, flavour: str) -> dict[str, Any]:
    sample = flavour == "sample"
    name = SAMPLE_NAMES[index] if sample and index < len(SAMPLE_NAMES) else _name(rng)
    start = _FIRST_DATE + timedelta(seconds=rng.randrange(_DATE_SPAN_SECONDS))
    object_id = f"{int(start.timestamp()):08x}{rng.getrandbits(64):016x}"
    count = _sample_message_count(rng, messages_per_session) if sample else messages_per_session
    messages = list(_messages(rng, name, start, count, sample))
    if not sample:
        return {
            "_id": object_id,
            "name": name,
            "platform_type": "Telegram",
            "contact_identifier": contact,
            "messages": messages,
        }
    return {
        "_id": {"$oid": object_id} if rng.random() < 0.3 else object_id,
        "name": name,
        "platform_type": rng.choice(("Telegram", "telegram", "TELEGRAM")),
        "contact_identifier": _sample_contact(rng, contact),
        "messages": messages,
    }


def _sample_message_count(rng: random.Random, mean: int) -> int:
    if mean == 0 or rng.random() < 0.03:
        return 0  # a few sessions without messages, which files do hold
    return rng.randint(1, 2 * mean - 1)


def _name(rng: random.Random) -> str:
    if rng.random() < 0.04:
        return rng.choice(FOREIGN_NAMES)
    first = rng.choice(FIRST_NAMES)
    if rng.random() < 0.25:
        first += " " + rng.choice(FIRST_NAMES)
    surnames = rng.sample(SURNAMES, rng.choice((1, 2, 2, 3)))
    return " ".join([first, *surnames])


def _sample_contact(rng: random.Random, contact: int) -> int | str:
    style = rng.random()
    if style < 0.6:
        return contact
    if style < 0.9:
        return str(contact)
    # E.164 with spaces, as people type it: +55 85 996199709 (country code 55 added).
    digits = str(contact)
    return f"+55 {digits[:2]} {digits[2:]}"


def _messages(rng: random.Random, name: str, start: datetime, count: int, sample: bool) -> Iterator[dict[str, Any]]:
    date_style = rng.choice(_DATE_STYLES) if sample else "z"
    ids_missing = sample and rng.random() < 0.15
    moment = start
    first_name = name.split()[0]
    for _ in range(count):
        moment += timedelta(seconds=rng.randint(5, 3600), milliseconds=rng.randrange(1000) if sample else 0)
        content = rng.choice(MESSAGES).format(first=first_name, order=rng.randrange(10_000, 100_000))
        message: dict[str, Any] = {}
        if not ids_missing and not (sample and rng.random() < 0.05):
            message["id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        message["content"] = content
        message["date"] = _date(moment, date_style)
        yield message


def _date(moment: datetime, style: str) -> str | dict[str, Any]:
    match style:
        case "z":
            return utc_text(moment)
        case "offset":
            return moment.astimezone(_BRASILIA).isoformat(timespec="milliseconds")
        case "naive":
            return moment.replace(tzinfo=None).isoformat(timespec="milliseconds")
        case "date-string":
            return {"$date": utc_text(moment)}
        case "date-millis":
            return {"$date": (moment - _EPOCH) // timedelta(milliseconds=1)}
        case "date-number-long":
            return {"$date": {"$numberLong": str((moment - _EPOCH) // timedelta(milliseconds=1))}}
    raise ValueError(f"unknown date style {style!r}")
