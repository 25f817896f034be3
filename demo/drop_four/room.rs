//! The one game room a backend hosts: who sits where, and what every client is told.
//!
//! Pure state: the server feeds it joins, moves, resets and leaves and sends the messages it
//! returns. One backend is one room, so there is no room id anywhere.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::game::{Board, Disc, Game, Outcome};

/// Identifies one WebSocket connection.
pub type ClientId = u64;

/// What a client may be in the room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Red,
    Yellow,
    Spectator,
}

impl Role {
    fn disc(self) -> Option<Disc> {
        match self {
            Role::Red => Some(Disc::Red),
            Role::Yellow => Some(Disc::Yellow),
            Role::Spectator => None,
        }
    }
}

/// Messages a client sends.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientMessage {
    /// Take a seat (or watch when both are taken). Sent once after connecting.
    Join,
    /// Drop a disc into a column (0-based).
    Move { column: usize },
    /// Start a new game (players only).
    Reset,
}

/// Messages the server sends.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerMessage {
    /// The answer to `join`.
    Welcome { role: Role },
    /// The whole game, sent to everyone after every change.
    State(StateView),
    /// A refused request, sent to its sender only.
    Error { message: String },
}

/// The game as clients see it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StateView {
    /// `board[row][column]`, row 0 at the top; `null` for an empty cell.
    pub board: Board,
    pub turn: Disc,
    /// `"red"`, `"yellow"`, `"draw"` or `null` while the game goes on.
    pub winner: Option<&'static str>,
    /// `[row, column]` cells of the winning line.
    #[serde(rename = "winningLine")]
    pub winning_line: Vec<(usize, usize)>,
    /// Which seats are taken.
    pub players: Seats,
    pub spectators: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Seats {
    pub red: bool,
    pub yellow: bool,
}

/// Who gets which message as the result of one event.
#[derive(Debug, Default, PartialEq)]
pub struct Outbox {
    pub to_sender: Vec<ServerMessage>,
    pub to_everyone: Vec<ServerMessage>,
}

#[derive(Default)]
pub struct Room {
    game: Game,
    roles: BTreeMap<ClientId, Role>,
}

impl Room {
    /// Handles one message from `client`.
    pub fn handle(&mut self, client: ClientId, message: ClientMessage) -> Outbox {
        match message {
            ClientMessage::Join => self.join(client),
            ClientMessage::Move { column } => {
                let Some(disc) = self.roles.get(&client).and_then(|role| role.disc()) else {
                    return error("spectators cannot play; join while a seat is free");
                };
                match self.game.play(disc, column) {
                    Ok(_) => self.broadcast_state(),
                    Err(e) => error(&e.to_string()),
                }
            }
            ClientMessage::Reset => {
                if self.roles.get(&client).and_then(|role| role.disc()).is_none() {
                    return error("only players can start a new game");
                }
                self.game = Game::default();
                self.broadcast_state()
            }
        }
    }

    fn join(&mut self, client: ClientId) -> Outbox {
        let role = match self.roles.get(&client) {
            Some(&role) => role,
            None => {
                let taken = |role| self.roles.values().any(|&r| r == role);
                let role = [Role::Red, Role::Yellow].into_iter().find(|&r| !taken(r)).unwrap_or(Role::Spectator);
                self.roles.insert(client, role);
                role
            }
        };
        Outbox { to_sender: vec![ServerMessage::Welcome { role }], to_everyone: vec![self.state()] }
    }

    /// Frees the seat of a client that disconnected; the game goes on for whoever takes it.
    pub fn leave(&mut self, client: ClientId) -> Outbox {
        match self.roles.remove(&client) {
            Some(_) => self.broadcast_state(),
            None => Outbox::default(),
        }
    }

    pub fn state(&self) -> ServerMessage {
        let winner = self.game.outcome.map(|outcome| match outcome {
            Outcome::Win(Disc::Red) => "red",
            Outcome::Win(Disc::Yellow) => "yellow",
            Outcome::Draw => "draw",
        });
        let seated = |role| self.roles.values().any(|&r| r == role);
        ServerMessage::State(StateView {
            board: self.game.board,
            turn: self.game.turn,
            winner,
            winning_line: self.game.winning_line.clone(),
            players: Seats { red: seated(Role::Red), yellow: seated(Role::Yellow) },
            spectators: self.roles.values().filter(|&&r| r == Role::Spectator).count(),
        })
    }

    fn broadcast_state(&self) -> Outbox {
        Outbox { to_sender: Vec::new(), to_everyone: vec![self.state()] }
    }
}

fn error(message: &str) -> Outbox {
    Outbox { to_sender: vec![ServerMessage::Error { message: message.to_owned() }], to_everyone: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn welcomed_as(outbox: &Outbox) -> Role {
        match outbox.to_sender.as_slice() {
            [ServerMessage::Welcome { role }] => *role,
            other => panic!("expected one welcome, got {other:?}"),
        }
    }

    #[test]
    fn the_first_two_clients_play_and_the_rest_watch() {
        let mut room = Room::default();
        assert_eq!(welcomed_as(&room.handle(1, ClientMessage::Join)), Role::Red);
        assert_eq!(welcomed_as(&room.handle(2, ClientMessage::Join)), Role::Yellow);
        assert_eq!(welcomed_as(&room.handle(3, ClientMessage::Join)), Role::Spectator);
    }

    #[test]
    fn a_freed_seat_goes_to_the_next_joiner() {
        let mut room = Room::default();
        room.handle(1, ClientMessage::Join);
        room.handle(2, ClientMessage::Join);
        room.leave(1);
        assert_eq!(welcomed_as(&room.handle(4, ClientMessage::Join)), Role::Red);
    }

    #[test]
    fn a_move_is_broadcast_to_everyone() {
        let mut room = Room::default();
        room.handle(1, ClientMessage::Join);
        let outbox = room.handle(1, ClientMessage::Move { column: 3 });
        assert!(outbox.to_sender.is_empty());
        let [ServerMessage::State(state)] = outbox.to_everyone.as_slice() else { panic!("{outbox:?}") };
        assert_eq!(state.board[5][3], Some(Disc::Red));
        assert_eq!(state.turn, Disc::Yellow);
    }

    #[test]
    fn a_refused_move_is_told_to_its_sender_only() {
        let mut room = Room::default();
        room.handle(1, ClientMessage::Join);
        room.handle(2, ClientMessage::Join);
        let outbox = room.handle(2, ClientMessage::Move { column: 0 });
        assert!(outbox.to_everyone.is_empty());
        assert_eq!(outbox.to_sender, vec![ServerMessage::Error { message: "it is not your turn".into() }]);
    }

    #[test]
    fn spectators_cannot_move_or_reset() {
        let mut room = Room::default();
        for client in 1..=3 {
            room.handle(client, ClientMessage::Join);
        }
        assert!(room.handle(3, ClientMessage::Move { column: 0 }).to_everyone.is_empty());
        assert!(room.handle(3, ClientMessage::Reset).to_everyone.is_empty());
    }

    #[test]
    fn reset_starts_an_empty_game() {
        let mut room = Room::default();
        room.handle(1, ClientMessage::Join);
        room.handle(1, ClientMessage::Move { column: 0 });
        let outbox = room.handle(1, ClientMessage::Reset);
        let [ServerMessage::State(state)] = outbox.to_everyone.as_slice() else { panic!("{outbox:?}") };
        assert!(state.board.iter().flatten().all(Option::is_none));
        assert_eq!(state.turn, Disc::Red);
    }

    #[test]
    fn messages_have_the_documented_json_shape() {
        let parsed: ClientMessage = serde_json::from_str(r#"{"type":"move","column":4}"#).unwrap();
        assert_eq!(parsed, ClientMessage::Move { column: 4 });
        let mut room = Room::default();
        room.handle(1, ClientMessage::Join);
        let json = serde_json::to_value(room.state()).unwrap();
        assert_eq!(json["type"], "state");
        assert_eq!(json["turn"], "red");
        assert_eq!(json["winner"], serde_json::Value::Null);
        assert_eq!(json["board"].as_array().unwrap().len(), 6);
        assert_eq!(json["players"]["red"], true);
        let welcome = serde_json::to_value(ServerMessage::Welcome { role: Role::Yellow }).unwrap();
        assert_eq!(welcome, serde_json::json!({"type": "welcome", "role": "yellow"}));
    }
}
